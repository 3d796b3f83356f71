import Testing
@testable import TalkieCluster
