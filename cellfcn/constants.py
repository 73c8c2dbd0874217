"""Names and numbers that more than one stage relies on, defined once."""

# Dataset folders (data_prep writes them, tools reads them).
MANIFEST = "manifest.json"
# manifest.json: bumped whenever its keys change meaning (1: nucleus_diameter_px and the 3-class targets).
MANIFEST_SCHEMA = 1
FORMATS = ("hdf5", "lmdb")
# Training stage -> the dataset it trains on, and the split its test net watches: fine-tuning watches val so
# that the real test split stays unseen until evaluation.
STAGES = {"pretrain": "synthetic", "finetune": "real"}
TEST_SPLIT = {"pretrain": "test", "finetune": "val"}
# The instance-aware targets beside the two-class label (data_prep.targets): number of classes -> (dataset file
# suffix, key of the split arrays). ``<split>_3class.h5``, ``<split>_4class_label_lmdb/``...
TARGET_FILES = {3: ("3class", "label3"), 4: ("4class", "label4")}

# Per-image intensity normalisation (percentiles mapped to 0 and 1), for training data and segmented images.
PCT_LOW = 1.0
PCT_HIGH = 99.8

# Three 2x2 max-poolings: input sides (and tile origins) must be multiples of this.
STRIDE = 8

# Caffe's solver random_seed is this plus SEED, so SEED=0 keeps the seed of the reported runs.
CAFFE_SEED_BASE = 1701

# Pixel-wise scores of Table 1, in its column order, with their display names.
METRICS = ("specificity", "precision", "recall", "accuracy", "f_score", "mcc")
LABELS = {"specificity": "specificity", "precision": "precision", "recall": "recall", "accuracy": "accuracy",
          "f_score": "F-score", "mcc": "MCC", "auc": "AUC"}

# table1.json: bumped whenever its rows change meaning or keys.
TABLE1_SCHEMA = 2
