"""Multi-task learning pipeline on TensorFlow 2: configs, layers, models, data, training and export."""
