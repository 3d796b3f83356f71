import Foundation
import PostgresNIO
import TalkieCore
import TalkieRunner
import TalkieStore

/// How the cluster renders its batch; recorded with the batch so every worker applies the same.
public struct ClusterPolicy: Codable, Sendable, Equatable {
    /// Attempts per item before a transient failure (or an expired lease) is final.
    public var maxAttempts = 3
    /// Seconds before the first automatic retry (doubles each time).
    public var retryDelay = 2.0
    /// A fixed per-item timeout; nil to scale with the narration.
    public var itemTimeout: Double?
    /// How long a claim lives without a heartbeat.
    public var leaseSeconds = 30.0
    /// Ask the engine for a contact sheet beside each output.
    public var contactSheets = false

    /// The defaults.
    public init() {}

    /// The retry policy these numbers make.
    public var retryPolicy: RetryPolicy { RetryPolicy(maxAttempts: maxAttempts, initialDelay: retryDelay) }
}

/// The cluster's batch row: inputs, policy and the cluster-wide commands.
public struct ClusterBatch: Sendable, Equatable {
    /// The narration, templates and settings; nil before a batch was submitted.
    public var inputs: BatchInputs?
    /// The shared output folder.
    public var outputs: String?
    /// How items are rendered and retried.
    public var policy: ClusterPolicy
    /// Every settings fingerprint that made an output.
    public var settingsHistory: [String: RenderSettings]
    /// Names people gave template paths (the studio's uploads).
    public var displayNames: [String: String]
    /// Workers claim nothing while paused.
    public var paused: Bool
    /// Grows with every stop: a worker whose claim is older stops its item.
    public var stopGeneration: Int64
    /// Grows with every "clear history".
    public var generation: Int64
}

/// An item with its lease, as the database holds it.
public struct ClusterItem: Sendable, Equatable {
    /// The item's record.
    public var item: Item
    /// Part of the current batch (others are history of earlier batches).
    public var inBatch: Bool
    /// The worker that holds it, while running.
    public var leaseOwner: String?
    /// The token of the latest claim.
    public var leaseToken: Int64?
    /// Seconds until the lease expires (negative: expired), while running.
    public var leaseExpiresIn: Double?
}

/// A worker's claim on one item: only a change naming this token can change the item.
public struct Lease: Sendable, Equatable {
    /// The item.
    public var key: ItemKey
    /// Increases with every claim of any item; never reused.
    public var token: Int64
    /// Who holds it.
    public var owner: String
}

/// What a claim hands a worker.
public struct Claim: Sendable {
    /// The item, already `running` with the attempt counted.
    public var item: Item
    /// The lease to name in every change.
    public var lease: Lease
    /// The batch as it stood at the claim.
    public var batch: ClusterBatch
}

/// The cluster's state in PostgreSQL. Every method is one transaction; every change that
/// a page should see sends its event with `pg_notify` in the same transaction, so an event
/// is never seen for a change that was rolled back.
public struct ClusterStore: Sendable {
    /// The channel events are sent on (LISTEN talkie_events).
    public static let eventChannel = "talkie_events"

    /// The database.
    public let database: ClusterDatabase

    /// A store over `database`.
    public init(_ database: ClusterDatabase) {
        self.database = database
    }

    private var logger: Logger { database.queryLogger }

    // MARK: - Reading

    /// The batch row.
    public func batch() async throws(ClusterError) -> ClusterBatch {
        let logger = logger
        return try await database.withConnection { connection in try await Self.batch(connection, logger: logger) }
    }

    /// Every item, sorted by key.
    public func items() async throws(ClusterError) -> [ClusterItem] {
        let logger = logger
        return try await database.withConnection { connection in
            let rows = try await connection.query("""
                SELECT item, in_batch, lease_owner, lease_token,
                       EXTRACT(EPOCH FROM lease_expires - now())::float8
                FROM talkie_items ORDER BY key
                """, logger: logger)
            var items: [ClusterItem] = []
            for try await (json, inBatch, owner, token, expiresIn) in rows.decode((String, Bool, String?, Int64?, Double?).self) {
                items.append(ClusterItem(item: try Self.decode(json), inBatch: inBatch, leaseOwner: owner, leaseToken: token,
                                         leaseExpiresIn: expiresIn))
            }
            return items
        }
    }

    /// Items of the batch still to do: (pending, running).
    public func openWork() async throws(ClusterError) -> (pending: Int, running: Int) {
        let logger = logger
        return try await database.withConnection { connection in
            let rows = try await connection.query("""
                SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'running')
                FROM talkie_items WHERE in_batch
                """, logger: logger)
            var result = (pending: 0, running: 0)
            for try await (pending, running) in rows.decode((Int, Int).self) { result = (pending, running) }
            return result
        }
    }

    // MARK: - The batch

    /// Records a batch planned by the `Reconciler` against `items()`: the changed records
    /// (never over an item a worker holds), which keys form the batch and in what order,
    /// the inputs and policy. Un-pauses the cluster. Sends `batch_started` and one
    /// `item_queued` per pending item.
    public func submit(changed: [Item], batchKeys: [ItemKey], inputs: BatchInputs, outputs: String, policy: ClusterPolicy,
                       displayNames: [String: String] = [:]) async throws(ClusterError) {
        let logger = logger
        try await database.transaction { connection in
            // The batch row first: it serialises submissions.
            let current = try await Self.batch(connection, logger: logger, forUpdate: true)
            var history = current.settingsHistory
            history[inputs.settings.fingerprint] = inputs.settings
            let inputsJSON = try Self.encode(inputs), policyJSON = try Self.encode(policy)
            let historyJSON = try Self.encode(history), namesJSON = try Self.encode(displayNames)
            try await connection.query("""
                UPDATE talkie_batch SET inputs = \(inputsJSON), outputs = \(outputs), policy = \(policyJSON),
                    settings_history = \(historyJSON), display_names = \(namesJSON), paused = false WHERE id = 1
                """, logger: logger)
            for item in changed {
                let json = try Self.encode(item)
                try await connection.query("""
                    INSERT INTO talkie_items (key, status, item) VALUES (\(item.key.id), \(item.state.status.rawValue), \(json))
                    ON CONFLICT (key) DO UPDATE SET status = excluded.status, item = excluded.item, not_before = now(),
                        lease_owner = NULL, lease_expires = NULL
                    WHERE talkie_items.status <> 'running'
                    """, logger: logger)
            }
            let keys = batchKeys.map(\.id)
            let positions = Array(0..<batchKeys.count)
            try await connection.query("UPDATE talkie_items SET in_batch = false WHERE in_batch", logger: logger)
            try await connection.query("""
                UPDATE talkie_items SET in_batch = true, position = batch.position
                FROM unnest(\(keys)::text[], \(positions)::int[]) AS batch(key, position)
                WHERE talkie_items.key = batch.key
                """, logger: logger)
            let rows = try await connection.query("""
                SELECT item FROM talkie_items WHERE in_batch AND status = 'pending' ORDER BY position
                """, logger: logger)
            var queued: [Item] = []
            for try await (json) in rows.decode(String.self) { queued.append(try Self.decode(json)) }
            try await Self.notify(connection, logger: logger, .batchStarted(total: batchKeys.count, toRender: queued.count,
                                                                              settings: inputs.settings.summary))
            for item in queued {
                let name = item.names.first.flatMap { displayNames[$0] } ?? item.displayName
                try await Self.notify(connection, logger: logger, .itemQueued(key: item.key, name: name))
            }
        }
    }

    /// Pauses (workers finish their items and claim no more) or resumes the cluster.
    public func setPaused(_ paused: Bool) async throws(ClusterError) {
        let logger = logger
        try await database.transaction { connection in
            try await connection.query("UPDATE talkie_batch SET paused = \(paused) WHERE id = 1", logger: logger)
            if paused {
                try await Self.notify(connection, logger: logger, .warning("the cluster is paused: running items finish, nothing new starts"))
            }
        }
    }

    /// Stops the cluster: paused, and every running item stops now and returns to pending
    /// (its worker sees the stop at its next heartbeat).
    public func stop() async throws(ClusterError) {
        let logger = logger
        try await database.transaction { connection in
            try await connection.query("UPDATE talkie_batch SET paused = true, stop_generation = stop_generation + 1 WHERE id = 1",
                                       logger: logger)
            try await Self.notify(connection, logger: logger, .warning("the cluster was stopped: running items return to the queue, nothing new starts"))
        }
    }

    /// "Clear history": forgets every item that no worker holds (outputs stay). Returns how
    /// many were forgotten.
    public func reset() async throws(ClusterError) -> Int {
        let logger = logger
        return try await database.transaction { connection in
            try await connection.query("UPDATE talkie_batch SET generation = generation + 1 WHERE id = 1", logger: logger)
            var count = 0
            for try await _ in try await connection.query("DELETE FROM talkie_items WHERE status <> 'running' RETURNING key",
                                                           logger: logger).decode(String.self) { count += 1 }
            return count
        }
    }

    // MARK: - Leases

    /// Claims the next pending item of the batch (`FOR UPDATE SKIP LOCKED`: two workers
    /// never wait for or take the same row), starts it, and leases it to `owner`. Nil when
    /// nothing can be claimed now (paused, or nothing pending whose retry delay has passed).
    public func claim(owner: String, device: String?) async throws(ClusterError) -> Claim? {
        let logger = logger
        return try await database.transaction { connection -> Claim? in
            let batch = try await Self.batch(connection, logger: logger)
            guard !batch.paused else { return nil }
            var found: String?
            for try await (json) in try await connection.query("""
                SELECT item FROM talkie_items WHERE status = 'pending' AND in_batch AND not_before <= now()
                ORDER BY position LIMIT 1 FOR UPDATE SKIP LOCKED
                """, logger: logger).decode(String.self) { found = json }
            guard let found else { return nil }
            var item = try Self.decode(found)
            try item.state.apply(.start)
            item.startedAt = Date()
            item.finishedAt = nil
            item.device = device
            let json = try Self.encode(item)
            var token: Int64 = 0
            for try await (next) in try await connection.query("""
                UPDATE talkie_items SET status = 'running', item = \(json), lease_owner = \(owner),
                    lease_token = nextval('talkie_lease_token'),
                    lease_expires = now() + make_interval(secs => \(batch.policy.leaseSeconds))
                WHERE key = \(item.key.id) RETURNING lease_token
                """, logger: logger).decode(Int64.self) { token = next }
            let name = item.names.first.flatMap { batch.displayNames[$0] } ?? item.displayName
            try await Self.notify(connection, logger: logger,
                                  .itemStarted(key: item.key, name: name, attempt: item.state.attempts, device: device))
            return Claim(item: item, lease: Lease(key: item.key, token: token, owner: owner), batch: batch)
        }
    }

    /// What a heartbeat learned.
    public enum Heartbeat: Sendable, Equatable {
        /// The lease is extended; `stopGeneration` tells whether a stop came since the claim.
        case held(stopGeneration: Int64)
        /// The item is no longer this lease's: abandon it quietly.
        case lost
    }

    /// Extends `lease` by the batch's lease time.
    public func heartbeat(_ lease: Lease) async throws(ClusterError) -> Heartbeat {
        let logger = logger
        return try await database.withConnection { connection in
            var answer = Heartbeat.lost
            for try await (generation) in try await connection.query("""
                UPDATE talkie_items SET lease_expires = now() + make_interval(secs =>
                    (SELECT (policy::json->>'leaseSeconds')::float8 FROM talkie_batch WHERE id = 1))
                WHERE key = \(lease.key.id) AND lease_token = \(lease.token) AND status = 'running'
                RETURNING (SELECT stop_generation FROM talkie_batch WHERE id = 1)
                """, logger: logger).decode(Int64.self) { answer = .held(stopGeneration: generation) }
            return answer
        }
    }

    /// Commits the item's new record under `lease`: true when it was still this lease's,
    /// false when the lease was lost (the item was reclaimed: nothing changes). `retryAfter`
    /// holds a pending item back that long. `event` is sent with the change.
    public func finish(_ item: Item, lease: Lease, retryAfter: Double = 0, event: BatchEvent) async throws(ClusterError) -> Bool {
        let logger = logger
        return try await database.transaction { connection in
            let json = try Self.encode(item)
            var updated = false
            for try await _ in try await connection.query("""
                UPDATE talkie_items SET status = \(item.state.status.rawValue), item = \(json), lease_owner = NULL,
                    lease_expires = NULL, not_before = now() + make_interval(secs => \(retryAfter))
                WHERE key = \(lease.key.id) AND lease_token = \(lease.token) AND status = 'running'
                RETURNING key
                """, logger: logger).decode(String.self) { updated = true }
            if updated { try await Self.notify(connection, logger: logger, event) }
            return updated
        }
    }

    /// Returns items whose lease expired to pending, the attempt counted (failed at the
    /// attempt cap, as an item interrupted on one machine). Any process of the cluster may
    /// call it; two at once never take the same row.
    public func reclaimExpired() async throws(ClusterError) -> [Item] {
        let logger = logger
        return try await database.transaction { connection in
            let batch = try await Self.batch(connection, logger: logger)
            var expired: [(Item, String?)] = []
            for try await (json, owner) in try await connection.query("""
                SELECT item, lease_owner FROM talkie_items WHERE status = 'running' AND lease_expires < now()
                FOR UPDATE SKIP LOCKED
                """, logger: logger).decode((String, String?).self) { expired.append((try Self.decode(json), owner)) }
            var reclaimed: [Item] = []
            for (item, owner) in expired {
                var next = item
                try next.state.apply(.interrupted(maxAttempts: batch.policy.maxAttempts))
                next.finishedAt = Date()
                let json = try Self.encode(next)
                try await connection.query("""
                    UPDATE talkie_items SET status = \(next.state.status.rawValue), item = \(json), lease_owner = NULL,
                        lease_expires = NULL, not_before = now()
                    WHERE key = \(item.key.id)
                    """, logger: logger)
                let name = item.names.first.flatMap { batch.displayNames[$0] } ?? item.displayName
                let holder = owner.map { " on \($0)" } ?? ""
                if next.state.status == .failed, let error = next.state.lastError {
                    try await Self.notify(connection, logger: logger, .itemFailed(key: item.key, name: name, error: error, willRetry: false))
                } else {
                    try await Self.notify(connection, logger: logger, .warning("\(name)'s worker\(holder) stopped answering; its lease expired and the item is queued again (attempt \(item.state.attempts) counted)"))
                    try await Self.notify(connection, logger: logger, .itemQueued(key: item.key, name: name))
                }
                reclaimed.append(next)
            }
            return reclaimed
        }
    }

    /// Sends an event to every listener (progress, warnings) outside any change.
    public func publish(_ event: BatchEvent) async throws(ClusterError) {
        let logger = logger
        try await database.withConnection { connection in try await Self.notify(connection, logger: logger, event) }
    }

    // MARK: - Moving a batch

    /// Writes item records as they are (a batch moved from another store), with the batch's
    /// inputs and, when given, its output folder. An item a worker holds is never replaced;
    /// one stored as running holds no lease here, so it counts as interrupted. Items of the
    /// batch's narration become the batch that workers claim from. Returns how many were written.
    @discardableResult
    public func save(_ items: [Item], batch inputs: BatchInputs?, outputs: String?,
                     settingsHistory: [String: RenderSettings] = [:]) async throws(ClusterError) -> Int {
        let logger = logger
        return try await database.transaction { connection in
            let current = try await Self.batch(connection, logger: logger, forUpdate: true)
            var history = current.settingsHistory.merging(settingsHistory) { _, new in new }
            if let inputs { history[inputs.settings.fingerprint] = inputs.settings }
            let historyJSON = try Self.encode(history)
            let inputsJSON = try (inputs ?? current.inputs).map(Self.encode)
            let folder = outputs ?? current.outputs
            try await connection.query("""
                UPDATE talkie_batch SET inputs = \(inputsJSON), outputs = \(folder), settings_history = \(historyJSON) WHERE id = 1
                """, logger: logger)
            let narration = (inputs ?? current.inputs)?.audio
            var written = 0
            for (position, item) in items.enumerated() {
                var stored = item
                if stored.state.status == .running { try stored.state.apply(.interrupted(maxAttempts: Int.max)) }
                let json = try Self.encode(stored)
                let member = stored.audioPath == narration
                for try await _ in try await connection.query("""
                    INSERT INTO talkie_items (key, status, item, in_batch, position)
                    VALUES (\(stored.key.id), \(stored.state.status.rawValue), \(json), \(member), \(position))
                    ON CONFLICT (key) DO UPDATE SET status = excluded.status, item = excluded.item,
                        in_batch = excluded.in_batch, position = excluded.position, not_before = now()
                    WHERE talkie_items.status <> 'running'
                    RETURNING key
                    """, logger: logger).decode(String.self) { written += 1 }
            }
            return written
        }
    }

    // MARK: - Helpers

    static func batch(_ connection: PostgresConnection, logger: Logger, forUpdate: Bool = false) async throws -> ClusterBatch {
        let lock = forUpdate ? " FOR UPDATE" : ""
        let rows = try await connection.query(PostgresQuery(unsafeSQL: """
            SELECT inputs, outputs, policy, settings_history, display_names, paused, stop_generation, generation
            FROM talkie_batch WHERE id = 1\(lock)
            """), logger: logger)
        for try await (inputs, outputs, policy, history, names, paused, stops, generation)
            in rows.decode((String?, String?, String, String, String, Bool, Int64, Int64).self) {
            let decoder = StateCoding.decoder
            return ClusterBatch(
                inputs: try inputs.map { try decoder.decode(BatchInputs.self, from: Data($0.utf8)) }, outputs: outputs,
                policy: (try? decoder.decode(ClusterPolicy.self, from: Data(policy.utf8))) ?? ClusterPolicy(),
                settingsHistory: try decoder.decode([String: RenderSettings].self, from: Data(history.utf8)),
                displayNames: try decoder.decode([String: String].self, from: Data(names.utf8)),
                paused: paused, stopGeneration: stops, generation: generation)
        }
        throw ClusterError(code: "cluster.schema", message: "the database has no batch row; run `talkie store migrate --store URL`")
    }

    static func notify(_ connection: PostgresConnection, logger: Logger, _ event: BatchEvent) async throws {
        let line = TimedEvent(time: Date(), event: event).jsonLine
        try await connection.query("SELECT pg_notify(\(eventChannel), \(line))", logger: logger)
    }

    static func encode<Value: Encodable>(_ value: Value) throws -> String {
        String(decoding: try StateCoding.encoder(pretty: false).encode(value), as: UTF8.self)
    }

    static func decode(_ json: String) throws -> Item {
        try StateCoding.decoder.decode(Item.self, from: Data(json.utf8))
    }
}

extension ClusterStore: BatchStore {
    public func storedItems() async throws -> [Item] { try await items().map(\.item) }

    public func storedBatch() async throws -> BatchInputs? { try await batch().inputs }

    public func save(_ items: [Item], batch: BatchInputs?) async throws {
        try await save(items, batch: batch, outputs: nil)
    }

    public func forgetItems() async throws -> Int { try await reset() }
}
