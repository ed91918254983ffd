from herdrt._pure import OnlineStats, QuantileSketch  # TEMPORARY placeholder
