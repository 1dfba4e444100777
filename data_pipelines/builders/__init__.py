"""TFDS builders that write array_record files without TensorFlow."""
