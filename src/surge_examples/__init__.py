"""The worked examples, as plugins of the Surge library: Fashion-MNIST with its CNN classifier
(`surge_examples.fashion`) and a CenterNet-style detector on Fashion-MNIST canvases
(`surge_examples.detection`). They register their datasets, model builders and commands through
the `surge.plugins` and `surge.cli` entry points; the library never imports them by name."""
