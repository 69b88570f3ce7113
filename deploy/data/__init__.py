"""Data: the images a model is evaluated and calibrated on (image folders, flat folders, .npz
arrays, the bundled digits), listed and streamed in batches, and the preprocessing recipe that
turns an image file into the model's input."""
