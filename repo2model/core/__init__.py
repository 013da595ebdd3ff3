"""What every stage needs: user errors, typed config, artifact paths, atomic and streaming artifact I/O, the records passed between stages, logging, progress, the stage CLIs' common parts."""
