def main() -> None:
    raise SystemExit("mops: not built yet")
