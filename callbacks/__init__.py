"""Document consumers: analysis callbacks, live plots, the tiled document source and result sink."""
