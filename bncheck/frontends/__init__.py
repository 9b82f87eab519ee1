"""The faces over the library: the pytest plugin, its benchmark items and the command line. Nothing below imports
them."""
