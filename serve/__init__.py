"""leaf.serve: distilled students in vLLM: throughput, latency, accuracy and attention focus.

    from leaf.serve import ServeConfig, run_serve
    run_serve(ServeConfig(models=["runs/student", "runs/distill/final"], data=Path("runs/analyze"),
                          output=Path("runs/serve")))

Modules: engines (vLLM and HF generate behind one interface, per-token timing), metrics (vLLM-named figures, pure),
prompts (problems from a dataset or a leaf analyze folder; random prompts), focus (attention focus via leaf.hooks),
report (Markdown and PNG), openai_server (vLLM's OpenAI-compatible server on loopback), run (the command).
"""

from leaf.serve.run import ServeConfig, run_serve

__all__ = ["ServeConfig", "run_serve"]
