"""ImageNet classifiers whose weights pip packages ship (MobileNetV2, EfficientNet-Lite0) and the
real photos that check them: agreement datasets for `surge optimize` and `surge tune`, JPEG files
for the pipelines in front of them."""
