"""StackStorm compatibility for pack code run by Squall: just what actions and sensors import."""
