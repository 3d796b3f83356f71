import PostgresNIO

/// The cluster's tables, created and migrated by Talkie itself. Each entry of `migrations`
/// takes the schema from its index to the next version; `talkie_schema` holds the version.
/// Only `talkie run --store`, `talkie serve --store` and `talkie store migrate` migrate; a worker checks that
/// the version is exactly its own and refuses to start otherwise.
public enum ClusterSchema {
    /// The schema this Talkie reads and writes.
    public static var current: Int { migrations.count }

    /// Statements per version step (PostgreSQL runs one statement per extended query).
    static let migrations: [[String]] = [
        [
            "CREATE TABLE talkie_schema (version integer NOT NULL)",
            "INSERT INTO talkie_schema (version) VALUES (0)",
            // One batch per database: its inputs, policy, and the cluster-wide commands.
            """
            CREATE TABLE talkie_batch (
                id integer PRIMARY KEY CHECK (id = 1),
                inputs text,
                outputs text,
                policy text NOT NULL,
                settings_history text NOT NULL DEFAULT '{}',
                display_names text NOT NULL DEFAULT '{}',
                paused boolean NOT NULL DEFAULT true,
                stop_generation bigint NOT NULL DEFAULT 0,
                generation bigint NOT NULL DEFAULT 0
            )
            """,
            "INSERT INTO talkie_batch (id, policy) VALUES (1, '{}')",
            // Lease tokens only grow, across every item and every claim.
            "CREATE SEQUENCE talkie_lease_token",
            // The item's record is the same JSON as in task_status.json; status and lease are
            // columns so claims and reclaims are plain indexed queries.
            """
            CREATE TABLE talkie_items (
                key text PRIMARY KEY,
                status text NOT NULL,
                in_batch boolean NOT NULL DEFAULT false,
                position integer NOT NULL DEFAULT 0,
                not_before timestamptz NOT NULL DEFAULT now(),
                lease_owner text,
                lease_token bigint,
                lease_expires timestamptz,
                item text NOT NULL
            )
            """,
            "CREATE INDEX talkie_items_claimable ON talkie_items (position) WHERE status = 'pending' AND in_batch",
            "CREATE INDEX talkie_items_leased ON talkie_items (lease_expires) WHERE status = 'running'",
        ],
    ]

    /// Creates or migrates the schema to `current`; returns the version found before. Two
    /// processes migrating at once take turns (an advisory lock).
    public static func migrate(_ database: ClusterDatabase) async throws(ClusterError) -> Int {
        let logger = database.queryLogger
        return try await database.transaction { connection in
            try await connection.query("SELECT pg_advisory_xact_lock(7265071)", logger: logger)
            let found = try await version(connection, logger: logger) ?? 0
            guard found <= current else { throw tooNew(found, database) }
            for step in found..<current {
                for statement in migrations[step] {
                    try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                }
                let next = step + 1
                try await connection.query("UPDATE talkie_schema SET version = \(next)", logger: logger)
            }
            return found
        }
    }

    /// Refuses (code `cluster.schema`) unless the database's schema is exactly `current`.
    public static func check(_ database: ClusterDatabase) async throws(ClusterError) {
        let logger = database.queryLogger
        let found = try await database.withConnection { connection in try await version(connection, logger: logger) }
        guard let found, found > 0 else {
            throw ClusterError(code: "cluster.schema", message: "the database at \(database.displayURL) has no Talkie schema yet; run `talkie store migrate --store URL` (or `talkie run --store URL …`) once to create it")
        }
        if found > current { throw tooNew(found, database) }
        if found < current {
            throw ClusterError(code: "cluster.schema", message: "the database at \(database.displayURL) has Talkie schema \(found), older than this Talkie's \(current); run `talkie store migrate --store URL` with this version first")
        }
    }

    private static func tooNew(_ found: Int, _ database: ClusterDatabase) -> ClusterError {
        ClusterError(code: "cluster.schema", message: "the database at \(database.displayURL) has Talkie schema \(found), newer than this Talkie's \(current); update Talkie on this machine to the version the rest of the cluster runs")
    }

    private static func version(_ connection: PostgresConnection, logger: Logger) async throws -> Int? {
        let rows = try await connection.query("SELECT to_regclass('talkie_schema') IS NOT NULL", logger: logger)
        var exists = false
        for try await (present) in rows.decode(Bool.self) { exists = present }
        guard exists else { return nil }
        var found: Int?
        for try await (version) in try await connection.query("SELECT version FROM talkie_schema", logger: logger).decode(Int.self) {
            found = version
        }
        return found
    }
}
