"""Write: the bounded queue, the writers and the output directory's publisher and retention."""
