import Testing
@testable import SluiceCore
