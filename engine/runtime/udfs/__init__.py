"""The batch UDFs of the actor pools (`engine.runtime.pipeline.actor_stream`): one class per pool, built once per
actor from a frozen settings object, then called with one numpy batch at a time. No module here imports Ray."""
