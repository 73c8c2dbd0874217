"""Caffe SGD solvers from a dataset manifest (solve.py), and the default solver files it generates."""
