"""Keras -> ONNX model bundle: conversion, parity check, INT8 quantization, manifest, validation."""
