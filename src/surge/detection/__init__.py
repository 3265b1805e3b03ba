"""Object detection on canvases of Fashion-MNIST items: data, COCO I/O, model and decoding."""
