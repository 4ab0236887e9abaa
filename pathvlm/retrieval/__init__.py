"""Text-to-image and image-to-image retrieval over embedded galleries."""
