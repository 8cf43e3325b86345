"""SUMO adapter: scenarios, detectors, the sensor model, the run loop and its measurements."""
