from drgrpo.app.cli import main

# The guard matters: a vLLM engine out of process (rollout.engine=vllm) spawns a child that
# imports this module again.
if __name__ == "__main__":
    raise SystemExit(main())
