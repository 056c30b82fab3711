"""JCDL on Caffe: joint image emotion classification and distribution
learning (Yang, She, Sun, IJCAI 2017). One module per stage; ``jcdl.cli`` is
the command line."""
__version__ = "0.1.0"
