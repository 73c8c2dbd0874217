"""The FCRN-A nets, written with caffe.NetSpec (net.py), and the prototxt files it generates."""
