"""Object detection on canvases of Fashion-MNIST items: the canvases (dataset
`fashion-detection`, command `surge data fashion-detection`), CenterNet and its loss."""
