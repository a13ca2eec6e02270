"""`python -m htmp_cli` and the `htmp` command; the CLI is imported when it runs, not when this
module is (worker processes spawned by htmp import their parent's main module)."""


def main() -> None:
    from htmp_cli.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
