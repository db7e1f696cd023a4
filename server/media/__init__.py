"""Plates in and out: OpenImageIO reading/writing (`io`), OpenColorIO conversion (`colour`), the
region of interest and resampling (`roi`), compositing (`composite`), and the layer the server
calls (`plate`: load_shot_inputs -> to_model_space -> from_model_space / composite_window)."""
