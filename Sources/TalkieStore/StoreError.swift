import Foundation
import TalkieCore

/// What can go wrong with the durable state, each with what to do about it.
public enum StoreError: TalkieError, Equatable {
    /// A system call failed on a path.
    case io(String, path: String, errno: Int32)
    /// fsync/fdatasync failed: the disk may not hold what was written. Fatal for the run.
    case syncFailed(path: String, errno: Int32)
    /// Another process holds the output folder's lock.
    case locked(path: String, holderPID: Int32?)
    /// The state file was written by a newer Talkie.
    case futureSchema(path: String, found: Int, supported: Int)
    /// A previous sync failure poisoned this store; nothing more is written.
    case poisoned
    /// An input changed while it was being read (still being copied or written).
    case changedWhileReading(path: String)
    /// A fault injected by a test, standing in for a crash at that point.
    case injectedFault(String)

    public var code: String {
        switch self {
        case .io: "store.io"
        case .syncFailed: "store.sync_failed"
        case .locked: "store.locked"
        case .futureSchema: "store.future_schema"
        case .poisoned: "store.poisoned"
        case .changedWhileReading: "input.changing"
        case .injectedFault: "store.injected_fault"
        }
    }

    public var message: String {
        switch self {
        case .io(let what, let path, let errno):
            "\(what): \(path): \(String(cString: strerror(errno))). Check that the folder exists, is writable and the disk is not full."
        case .syncFailed(let path, let errno):
            "the disk did not confirm a write to \(path) (\(String(cString: strerror(errno)))); the run stopped so that nothing is reported done that might not be on disk. Check the disk and run the same command again."
        case .locked(let path, let pid):
            "another Talkie process\(pid.map { " (pid \($0))" } ?? "") is using \(path); wait for it to finish or stop it first"
        case .futureSchema(let path, let found, let supported):
            "\(path) was written by a newer Talkie (schema \(found), this one reads up to \(supported)); upgrade Talkie, or move the file away to start a new batch"
        case .poisoned:
            "the state store stopped after an earlier write error; run the command again"
        case .changedWhileReading(let path):
            "\(path) changed while it was being read (is it still being copied or written?); wait until it is complete, then run again"
        case .injectedFault(let what):
            "injected fault at \(what)"
        }
    }
}
