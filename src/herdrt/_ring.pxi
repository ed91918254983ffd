from herdrt._pure import HashRing, md5_shard, jump_hash  # TEMPORARY placeholder
