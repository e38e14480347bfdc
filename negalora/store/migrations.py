"""Forward-only schema migrations. The version is SQLite's ``PRAGMA user_version``."""

V1 = """
CREATE TABLE models (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    source TEXT NOT NULL,              -- demo | folder | file | hub
    location TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,         -- sha256 hex
    created TEXT NOT NULL
);
CREATE TABLE generations (
    id INTEGER PRIMARY KEY,
    created TEXT NOT NULL,
    prompt TEXT NOT NULL,
    negative TEXT NOT NULL,
    seed INTEGER NOT NULL,
    steps INTEGER NOT NULL,
    guidance REAL NOT NULL,
    scheduler TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    model_id INTEGER REFERENCES models(id),
    lora_path TEXT NOT NULL DEFAULT '',
    lora_hash TEXT NOT NULL DEFAULT '',
    lora_scale REAL NOT NULL DEFAULT 1.0,
    noise_device TEXT NOT NULL,
    recipe TEXT NOT NULL               -- full JSON recipe (negalora.recipe.Recipe)
);
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,                -- relative to the home directory
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    source TEXT NOT NULL,              -- generated | imported
    generation_id INTEGER REFERENCES generations(id),
    original_name TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL
);
CREATE INDEX images_generation ON images(generation_id);
CREATE TABLE ratings (
    image_id INTEGER PRIMARY KEY REFERENCES images(id),
    verdict TEXT NOT NULL CHECK (verdict IN ('reject', 'pick')),
    reasons TEXT NOT NULL DEFAULT '[]', -- JSON list of tags
    updated TEXT NOT NULL
);
CREATE INDEX ratings_verdict ON ratings(verdict);
CREATE TABLE rating_events (
    id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL REFERENCES images(id),
    verdict TEXT,                      -- NULL means cleared
    reasons TEXT NOT NULL DEFAULT '[]',
    previous_verdict TEXT,
    previous_reasons TEXT NOT NULL DEFAULT '[]',
    created TEXT NOT NULL
);
CREATE INDEX rating_events_image ON rating_events(image_id);
"""

V2 = """
ALTER TABLE rating_events ADD COLUMN batch TEXT;  -- one rate() call: what one undo reverts
CREATE INDEX rating_events_batch ON rating_events(batch);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,               -- also the folder name under <home>/runs/
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    status TEXT NOT NULL,              -- running | done | cancelled | failed | stopped_nan | paused
    model_id INTEGER REFERENCES models(id),
    config TEXT NOT NULL,              -- JSON (negalora.train.config.TrainConfig)
    images INTEGER NOT NULL,           -- training images after pre-flight
    steps_done INTEGER NOT NULL DEFAULT 0,
    final_loss REAL,
    message TEXT NOT NULL DEFAULT ''
);
CREATE TABLE run_losses (
    run_id TEXT NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    loss REAL NOT NULL,
    lr REAL NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE checkpoints (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    path TEXT NOT NULL,                -- relative to the home directory
    sha256 TEXT NOT NULL,
    created TEXT NOT NULL,
    removed INTEGER NOT NULL DEFAULT 0, -- pruned by keep-last-K
    UNIQUE (run_id, step)
);
"""

V3 = """
ALTER TABLE runs ADD COLUMN best_step INTEGER;  -- the checkpoint the artist marked best in a sweep
CREATE TABLE prompt_sets (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    prompts TEXT NOT NULL,             -- JSON list of prompts
    seeds TEXT NOT NULL,               -- JSON list of seeds
    settings TEXT NOT NULL DEFAULT '{}', -- JSON: steps, guidance, negative token, size
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE TABLE comparisons (
    id INTEGER PRIMARY KEY,
    created TEXT NOT NULL,
    kind TEXT NOT NULL,                -- three_way | scale_sweep | checkpoint_sweep
    run_id TEXT REFERENCES runs(id),   -- NULL when the LoRA is a file from outside
    step INTEGER,
    lora_path TEXT NOT NULL DEFAULT '',
    lora_hash TEXT NOT NULL DEFAULT '',
    prompt_set_id INTEGER REFERENCES prompt_sets(id),
    columns TEXT NOT NULL,             -- JSON list of {key, label, ...}
    config TEXT NOT NULL,              -- JSON: the comparison request
    grid_path TEXT NOT NULL DEFAULT '', -- relative to the home directory
    status TEXT NOT NULL               -- running | done | cancelled
);
CREATE TABLE comparison_cells (
    comparison_id INTEGER NOT NULL REFERENCES comparisons(id),
    row INTEGER NOT NULL,
    col INTEGER NOT NULL,
    image_id INTEGER NOT NULL REFERENCES images(id),
    PRIMARY KEY (comparison_id, row, col)
);
CREATE INDEX comparison_cells_image ON comparison_cells(image_id);
CREATE TABLE votes (
    id INTEGER PRIMARY KEY,
    created TEXT NOT NULL,
    comparison_id INTEGER REFERENCES comparisons(id),
    run_id TEXT,
    step INTEGER,                      -- the checkpoint of contender a
    a_label TEXT NOT NULL,             -- the contender, e.g. "LoRA + negative"
    a_image_id INTEGER NOT NULL REFERENCES images(id),
    b_label TEXT NOT NULL,             -- the baseline, e.g. "negative only" or another checkpoint
    b_image_id INTEGER NOT NULL REFERENCES images(id),
    a_on_left INTEGER NOT NULL,        -- the random order that was shown
    choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie')),
    outcome TEXT NOT NULL CHECK (outcome IN ('a', 'b', 'tie'))
);
CREATE INDEX votes_run ON votes(run_id, step);
CREATE TABLE exports (
    id INTEGER PRIMARY KEY,
    created TEXT NOT NULL,
    run_id TEXT REFERENCES runs(id),
    step INTEGER NOT NULL,
    format TEXT NOT NULL,              -- kohya | diffusers
    path TEXT NOT NULL,                -- absolute: exports may go anywhere
    sha256 TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}' -- JSON: the header metadata written
);
"""

V4 = """
ALTER TABLE images ADD COLUMN missing INTEGER NOT NULL DEFAULT 0;  -- the file was gone at the last check
CREATE TABLE deleted_images (
    id INTEGER PRIMARY KEY,            -- an image deleted in the app; its id is never given out again
    sha256 TEXT NOT NULL,
    path TEXT NOT NULL,                -- relative to the home directory
    deleted TEXT NOT NULL,
    file_removed INTEGER NOT NULL DEFAULT 0  -- 0 while a crash may have left the file on disk
);
"""

V5 = """
ALTER TABLE runs ADD COLUMN best_scale REAL;  -- the both-pass LoRA strength the artist marked best in a sweep
"""

# Index i holds the SQL that takes the schema from version i to i + 1.
MIGRATIONS: list[str] = [V1, V2, V3, V4, V5]
SCHEMA_VERSION = len(MIGRATIONS)
