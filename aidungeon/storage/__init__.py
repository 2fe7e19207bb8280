"""Where stories live: versioned save files, the save-slot port, story settings, import and export.

It never imports the model.
"""
