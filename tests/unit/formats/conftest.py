"""Models written once per session by TensorFlow and Caffe's schema: the `tf_models` and
`caffe_model` fixtures are in tests/conftest.py, shared with tests/integration/formats."""
