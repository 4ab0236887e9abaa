"""Image-only foundation models (UNI, Virchow, H-optimus, Prov-GigaPath, Phikon, ...) behind ``encode_image``."""
