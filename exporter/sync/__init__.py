"""One sync run: crawl Tapkey, diff against stored rows, write versions; engine.py orchestrates."""
