"""Training, evaluation and export of the pneumonia CNN the workers run.

``worker`` never imports this package; the two share ``core.preprocess`` (the one preprocessing
function) and ``core.gradcam``. TensorFlow is imported inside functions that need it, so importing
the command line stays fast.
"""
