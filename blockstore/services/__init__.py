"""Services on top of the LU API: paging-file LUs for client partitions, and
image import and deployment. They hold their records in the pool (Pool.svc_*) and use nothing
below the Pool and LU interface."""
