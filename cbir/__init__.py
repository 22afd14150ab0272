"""Content-based image retrieval on Oxford5k / Paris6k with pretrained Keras backbones.

Importing the package is cheap: TensorFlow/Keras are imported only where a network is built.
"""

__version__ = "0.1.0"
