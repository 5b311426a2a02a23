"""Genetic search (SI 2.2): jackhmmer / nhmmer with pyhmmer over sharded FASTA databases.

Library only (no Ray): settings (`config`), databases and shards (`databases`), the search
iteration over shards (`search`), a3m output (`a3m_out`), the content-addressed cache
(`cache`) and filling jobs' MSAs (`fill`). `foldray.actors.msa_stage` fans the shard
searches out over Ray.
"""
