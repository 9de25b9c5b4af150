"""The index's tables (documented in docs/schema.md) and which rows come from which run file."""

from __future__ import annotations

METRICS, EVENTS, SYSTEM = "metrics.jsonl", "events.jsonl", "system.jsonl"
TAILED = (METRICS, EVENTS, SYSTEM)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, name VARCHAR, recipe VARCHAR, created VARCHAR,
    imported BOOLEAN, dataset_size BIGINT, info JSON);
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR NOT NULL, step BIGINT NOT NULL, attempt INTEGER NOT NULL,
    key VARCHAR NOT NULL, value DOUBLE, ts DOUBLE);
CREATE TABLE IF NOT EXISTS attempts (
    run_id VARCHAR, attempt INTEGER, first_step BIGINT, PRIMARY KEY (run_id, attempt));
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id VARCHAR, step BIGINT, complete BOOLEAN, resumable BOOLEAN, PRIMARY KEY (run_id, step));
CREATE TABLE IF NOT EXISTS evaluations (
    run_id VARCHAR, eval_id VARCHAR, checkpoint BIGINT, task VARCHAR, score DOUBLE,
    details VARCHAR, ts DOUBLE);
CREATE TABLE IF NOT EXISTS eval_samples (
    run_id VARCHAR, eval_id VARCHAR, checkpoint BIGINT, task VARCHAR, sample BIGINT, doc_id VARCHAR,
    prompt VARCHAR, gold VARCHAR, prediction VARCHAR, score DOUBLE, metrics JSON);
CREATE TABLE IF NOT EXISTS events (
    run_id VARCHAR, "offset" BIGINT, ts DOUBLE, event VARCHAR, data JSON);
CREATE TABLE IF NOT EXISTS system (
    run_id VARCHAR, ts DOUBLE, gpu INTEGER, util DOUBLE, mem_used DOUBLE, mem_total DOUBLE,
    power_w DOUBLE);
CREATE TABLE IF NOT EXISTS quarantine (
    run_id VARCHAR, file VARCHAR, "offset" BIGINT, text VARCHAR, reason VARCHAR);
CREATE TABLE IF NOT EXISTS ingest_state (
    run_id VARCHAR, file VARCHAR, "offset" BIGINT, PRIMARY KEY (run_id, file));
CREATE TABLE IF NOT EXISTS steps (
    run_id VARCHAR NOT NULL, step BIGINT NOT NULL, attempt INTEGER NOT NULL, ts DOUBLE);
CREATE TABLE IF NOT EXISTS phase_cache (
    run_id VARCHAR, params VARCHAR, version BIGINT, result JSON, PRIMARY KEY (run_id, params));
CREATE TABLE IF NOT EXISTS meta (schema_version INTEGER);
-- A random id per index file (a rebuild draws a new one) and a count of the ingests written to
-- it: a process that knew another id, or a later count (the file was deleted, replaced by another
-- or by an older copy), notices.
CREATE TABLE IF NOT EXISTS index_id (id VARCHAR, generation BIGINT);
-- Each step once: a restarted attempt supersedes what earlier attempts logged from the step it
-- resumed at, and a key logged twice in one step keeps its last value.
CREATE OR REPLACE VIEW metrics_latest AS
SELECT m.run_id, m.step, m.attempt, m.key, m.value, m.ts
FROM metrics m
WHERE NOT EXISTS (SELECT 1 FROM attempts a WHERE a.run_id = m.run_id AND a.attempt > m.attempt
                  AND a.first_step <= m.step)
QUALIFY row_number() OVER (PARTITION BY m.run_id, m.step, m.key
                           ORDER BY m.attempt DESC, m.ts DESC NULLS LAST) = 1;
"""
TABLES = ("runs", "metrics", "attempts", "checkpoints", "evaluations", "eval_samples", "events", "system",
          "quarantine", "ingest_state", "steps", "phase_cache")
SCHEMA_VERSION = 4  # a file written with another version is dropped and read again
# Rows that came from each tailed file, dropped when that file is found rewritten from scratch.
FILE_TABLES = {METRICS: ("metrics", "attempts", "steps", "phase_cache"),
               EVENTS: ("events", "evaluations", "eval_samples"), SYSTEM: ("system",)}
