"""The studies' Hydra presets, found through the search path in conf/config.yaml (`pkg://studies.conf`)."""
