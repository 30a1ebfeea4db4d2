"""Reading, fitting and writing media: video, audio, geometry, masks, mp4/wav writing, synthetic clips."""
