import Foundation
import TalkieCore

/// What the user asked to retry, on top of what a run does anyway.
public enum RetryRequest: String, Sendable, Equatable {
    /// Failed items go back to pending, attempts start again.
    case failed
    /// Successes made with settings other than the current ones are rendered again.
    case otherSettings
}

/// Matches the stored items with the inputs seen now. Pure: no I/O, so every rule is tested
/// without files.
public struct Reconciler {
    /// One template found on disk.
    public struct Input: Sendable, Equatable {
        /// Its path.
        public var path: String
        /// Its content hash.
        public var hash: ContentHash

        /// Creates an input.
        public init(path: String, hash: ContentHash) {
            self.path = path
            self.hash = hash
        }
    }

    /// The outcome: item records to commit and the batch's keys in queue order.
    public struct Plan: Sendable, Equatable {
        /// Items whose record changed (new ones included).
        public var changed: [Item] = []
        /// Every key of the batch (this narration × the templates present), sorted by name.
        public var batch: [ItemKey] = []
        /// Notes for the run log.
        public var notes: [String] = []
    }

    /// The narration's hash and path.
    public var audio: ContentHash
    /// The narration's path.
    public var audioPath: String
    /// The current settings' fingerprint.
    public var settingsFingerprint: String
    /// The attempt cap, for items found interrupted.
    public var maxAttempts: Int
    /// An explicit retry, if the user asked.
    public var retry: RetryRequest?
    /// Names people gave template paths (the studio's uploads); the queue is sorted by them.
    public var displayNames: [String: String] = [:]
    /// A running item is a live worker's (cluster mode: it holds a lease) rather than one a
    /// dead run left behind; it is left alone.
    public var runningHoldsLease = false

    /// Creates a reconciler.
    public init(audio: ContentHash, audioPath: String, settingsFingerprint: String, maxAttempts: Int, retry: RetryRequest?) {
        self.audio = audio
        self.audioPath = audioPath
        self.settingsFingerprint = settingsFingerprint
        self.maxAttempts = maxAttempts
        self.retry = retry
    }

    /// Plans the batch. `outputExists` says whether a success's output is still on disk.
    public func plan(stored: [ItemKey: Item], inputs: [Input], now: Date,
                     outputExists: (String) -> Bool) -> Plan {
        var plan = Plan()
        var namesByHash: [ContentHash: [String]] = [:]
        for input in inputs { namesByHash[input.hash, default: []].append(input.path) }
        var changed: [ItemKey: Item] = [:]

        // Items the previous run left running were interrupted, whichever batch they belong to.
        for (key, item) in stored where item.state.status == .running && !runningHoldsLease {
            var next = item
            try? next.state.apply(.interrupted(maxAttempts: maxAttempts))
            changed[key] = next
            plan.notes.append("\(item.displayName) was being rendered when the previous run ended; it is \(next.state.status == .pending ? "queued again" : "failed after \(item.state.attempts) interrupted attempts")")
        }

        for (hash, names) in namesByHash {
            let key = ItemKey(video: hash, audio: audio)
            let sortedNames = names.sorted()
            var item = changed[key] ?? stored[key] ?? Item(key: key, names: sortedNames, audioPath: audioPath, createdAt: now)
            let isNew = stored[key] == nil
            if item.names != sortedNames {
                if !isNew { plan.notes.append("\(item.displayName) is now named \(sortedNames.map { ($0 as NSString).lastPathComponent }.joined(separator: ", ")) (same content, not rendered again)") }
                item.names = sortedNames
            }
            switch item.state.status {
            case .success:
                if let output = item.state.output, !outputExists(output) {
                    try? item.state.apply(.rerender(reason: "output missing"))
                    plan.notes.append("the output of \(item.displayName) (\(output)) is missing; it is rendered again")
                } else if retry == .otherSettings, item.state.settingsFingerprint != settingsFingerprint {
                    try? item.state.apply(.rerender(reason: "other settings"))
                }
            case .failed where retry == .failed:
                try? item.state.apply(.retryByUser)
            default:
                break
            }
            if isNew || item != stored[key] { changed[key] = item }
            plan.batch.append(key)
        }
        plan.changed = changed.values.sorted { $0.key < $1.key }
        let merged = stored.merging(changed) { _, new in new }
        func sortName(_ key: ItemKey) -> String {
            let path = merged[key]?.names.first ?? ""
            return displayNames[path] ?? (path as NSString).lastPathComponent
        }
        plan.batch.sort { (sortName($0), $0) < (sortName($1), $1) }
        return plan
    }
}
