"""Fashion-MNIST: the IDX files of Debian's `dataset-fashion-mnist` and the default model, a
small CNN classifier (registered as dataset `fashion-mnist` and model `fashion-cnn`)."""
