"""The two cacheable answers of a learner (weaknesses, recommendations): computed from
PostgreSQL with the served model, kept in the cache, warmed ahead of demand. Above the data,
ML and cache layers; below the API, which only translates HTTP into calls here."""
