"""Terminal input and output: the only package that touches the terminal."""
