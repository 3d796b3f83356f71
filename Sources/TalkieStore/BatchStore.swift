import TalkieCore

/// The state of one batch, wherever it is kept: the journal and snapshot of an output folder
/// (`StateStore`), or a cluster's PostgreSQL database (`ClusterStore`). A batch moves between
/// stores through it (`talkie store export|import`), and the shared store tests hold every
/// store to the same behaviour through it.
public protocol BatchStore {
    /// Every item, sorted by key.
    func storedItems() async throws -> [Item]
    /// The batch's inputs and settings, once recorded.
    func storedBatch() async throws -> BatchInputs?
    /// Makes these item records (each replaces the item's earlier record) and batch inputs
    /// durable. When it returns, they survive a crash of this process.
    func save(_ items: [Item], batch: BatchInputs?) async throws
    /// Clear history: forgets every item (outputs stay), keeps the batch's inputs; returns
    /// how many items were forgotten.
    func forgetItems() async throws -> Int
}

extension StateStore: BatchStore {
    public func storedItems() -> [Item] { allItems }

    public func storedBatch() -> BatchInputs? { batch }

    public func save(_ items: [Item], batch: BatchInputs?) throws {
        try commit(items, batch: batch)
    }

    public func forgetItems() throws -> Int {
        let forgotten = count
        try reset()
        return forgotten
    }
}
