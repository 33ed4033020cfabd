-- The PostgreSQL journal's schema as main wrote it before the unified migrations (1f02576): its three
-- versions, then the version table. tests/test_journal_schema.py opens a database made with it.
-- version 1
CREATE TABLE requests (
    seq BIGSERIAL PRIMARY KEY,
    dedupe_key BYTEA NOT NULL,
    request_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    to_number TEXT NOT NULL,
    from_number TEXT NOT NULL,
    name TEXT NOT NULL,
    content TEXT NOT NULL,
    retries INTEGER NOT NULL,
    options TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    attempt_started_at DOUBLE PRECISION,
    sid TEXT,
    last_error TEXT,
    status BYTEA,
    status_published INTEGER NOT NULL DEFAULT 0,
    accepted_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    digest_seq BIGINT,
    members INTEGER NOT NULL DEFAULT 0,
    lookups INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE tracking (
    seq BIGINT PRIMARY KEY,
    sid TEXT NOT NULL,
    next_check_at DOUBLE PRECISION NOT NULL,
    "interval" DOUBLE PRECISION NOT NULL,
    deadline DOUBLE PRECISION NOT NULL,
    last_status TEXT NOT NULL
);
CREATE TABLE followups (
    id BIGSERIAL PRIMARY KEY,
    payload BYTEA NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE windows (
    key TEXT PRIMARY KEY,
    opens_at DOUBLE PRECISION NOT NULL,
    closes_at DOUBLE PRECISION NOT NULL,
    passed INTEGER NOT NULL,
    next_at DOUBLE PRECISION NOT NULL,
    digest_seq BIGINT
);
CREATE TABLE counters (
    span TEXT NOT NULL,
    scope TEXT NOT NULL,
    bucket BIGINT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (span, scope, bucket)
);
CREATE INDEX requests_dedupe ON requests (dedupe_key, accepted_at);
CREATE INDEX requests_waiting ON requests (seq) WHERE state = 'accepted';
CREATE INDEX requests_due ON requests (next_attempt_at) WHERE state = 'accepted';
CREATE INDEX requests_sending ON requests (seq) WHERE state = 'sending';
CREATE INDEX requests_doubt ON requests (next_attempt_at) WHERE state = 'doubt';
CREATE INDEX requests_folded ON requests (seq) WHERE state = 'folded';
CREATE INDEX requests_members ON requests (digest_seq) WHERE digest_seq IS NOT NULL;
CREATE INDEX requests_unpublished ON requests (seq) WHERE status IS NOT NULL AND status_published = 0;
CREATE UNIQUE INDEX requests_sid_claim ON requests (sid) WHERE sid IS NOT NULL;
CREATE INDEX requests_finished ON requests (updated_at) WHERE status_published = 1;
CREATE INDEX tracking_sid ON tracking (sid);
CREATE INDEX tracking_due ON tracking (next_check_at);
CREATE INDEX followups_unpublished ON followups (id) WHERE published = 0;
CREATE INDEX windows_closing ON windows (closes_at);

-- version 2
ALTER TABLE requests ADD COLUMN owner TEXT, ADD COLUMN lease_until DOUBLE PRECISION,
    ADD COLUMN publisher TEXT, ADD COLUMN publish_lease DOUBLE PRECISION;
CREATE INDEX requests_leased ON requests (owner) WHERE state IN ('accepted', 'sending', 'doubt');
CREATE INDEX requests_publishing ON requests (publisher) WHERE status IS NOT NULL AND status_published = 0;

-- version 3
CREATE INDEX requests_retry ON requests (seq) WHERE state = 'retry';

CREATE TABLE journal_schema (version INTEGER NOT NULL);
INSERT INTO journal_schema VALUES (3);
