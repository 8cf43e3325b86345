"""The net model: signal models, detector layout and corridors, read from a SUMO net.

Shared by the simulation (``sim/``) and the field service: both model a city's signals from
its net (``net``), place or adopt the detectors its approaches have (``layout``) and turn an
ambulance's route into a corridor of signals (``corridors``). sumolib reads the net; nothing
here starts SUMO, speaks MQTT or touches a database.
"""
