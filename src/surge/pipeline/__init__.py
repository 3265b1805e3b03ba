"""Pipelines (`kind: pipeline`): a DAG of model and processor steps served like a model."""

from surge.pipeline.graph import StepTypes, check_types, plan
from surge.pipeline.served import PLATFORM, ServedPipeline, pipeline_signature

__all__ = ["PLATFORM", "ServedPipeline", "StepTypes", "check_types", "pipeline_signature", "plan"]
