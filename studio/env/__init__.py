"""The leaves: modules that import nothing of the studio (paths, ranks, devices, io). Everything else may use them."""
