"""``python -m scirs2_optim_jax``: the same as the ``scirs2-optim`` command."""

from scirs2_optim_jax.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
