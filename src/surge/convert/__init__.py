"""TensorFlow SavedModel, TF-Keras `.h5` and Caffe models, converted to checked ONNX files."""

from surge.convert.pipeline import Conversion, Parity, convert, converted_model
from surge.convert.sources import SOURCE_NAMES, Source, find_source

__all__ = ["SOURCE_NAMES", "Conversion", "Parity", "Source", "convert", "converted_model", "find_source"]
