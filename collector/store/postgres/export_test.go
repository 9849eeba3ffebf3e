package postgres

// Migrations are the schema's steps, for tests that build a database of
// an older version.
var Migrations = migrations
